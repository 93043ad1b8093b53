"""asyncio listeners and signals: what the shared server needs from this runtime."""

from __future__ import annotations

import asyncio
import signal
import threading
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from multicorn.runtime.asyncio.runtime import AsyncioRuntime
from multicorn.runtime.asyncio.tcp import AsyncioConnection

if TYPE_CHECKING:
    import socket
    import ssl
    from collections.abc import AsyncIterator

    from multicorn.runtime.base import HandlerFactory


class AsyncioBackend:
    def __init__(self) -> None:
        self.runtime = AsyncioRuntime(asyncio.get_running_loop())
        self._servers: list[asyncio.Server] = []

    @asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await self.runtime.cancel_all()

    async def start_listener(
        self,
        sock: socket.socket,
        factory: HandlerFactory,
        *,
        backlog: int,
        ssl_context: ssl.SSLContext | None,
        handshake_timeout: float,
    ) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: AsyncioConnection(factory, self.runtime),
            sock=sock,
            backlog=backlog,
            ssl=ssl_context,
            # A failed or slow handshake is logged by asyncio at debug level only.
            ssl_handshake_timeout=handshake_timeout if ssl_context is not None else None,
        )
        self._servers.append(server)

    def stop_listeners(self) -> None:
        # Server.close() stops accepting; its wait_closed() is not awaited because on 3.12+ it
        # also waits for every open connection, which would defeat the graceful timeout.
        for server in self._servers:
            server.close()

    async def wait_for_signal(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        if threading.current_thread() is not threading.main_thread():
            await stop.wait()  # no signals off the main thread: wait to be cancelled
            return
        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
