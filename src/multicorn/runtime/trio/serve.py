"""trio listeners and signals: what the shared server needs from this runtime."""

from __future__ import annotations

import errno
import signal
import threading
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

from multicorn.runtime.trio.runtime import TrioRuntime
from multicorn.runtime.trio.tcp import serve_connection

if TYPE_CHECKING:
    import logging
    import socket
    import ssl
    from collections.abc import AsyncIterator

    from multicorn.runtime.base import HandlerFactory

# Out of file descriptors or memory: back off instead of spinning on accept().
_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_ACCEPT_BATCH = 1024


class TrioBackend:
    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._accepting: list[trio.CancelScope] = []
        self._listening: list[socket.socket] = []
        self._nursery: trio.Nursery
        self.runtime: TrioRuntime

    @asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.runtime = TrioRuntime(nursery)
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()

    async def start_listener(
        self,
        sock: socket.socket,
        factory: HandlerFactory,
        *,
        backlog: int,
        ssl_context: ssl.SSLContext | None,
        handshake_timeout: float,
    ) -> None:
        sock.listen(backlog)
        sock.setblocking(False)
        # The scope exists before the task starts, so stop_listeners() can never miss it.
        scope = trio.CancelScope()
        self._accepting.append(scope)
        self._listening.append(sock)
        tls = None if ssl_context is None else (ssl_context, handshake_timeout)
        self._nursery.start_soon(self._accept_loop, sock, factory, scope, tls)

    async def _accept_loop(
        self,
        sock: socket.socket,
        factory: HandlerFactory,
        scope: trio.CancelScope,
        tls: tuple[ssl.SSLContext, float] | None,
    ) -> None:
        # Accept every pending connection per wake-up, as asyncio does: one accept per scheduler
        # turn (trio's SocketListener) leaves a burst of new clients queued behind busy ones for
        # whole seconds.
        with scope:
            while True:
                try:
                    await trio.lowlevel.wait_readable(sock)
                except (trio.ClosedResourceError, OSError, ValueError):
                    return  # the listener was closed (fd -1 is a ValueError): shutdown
                for _ in range(_ACCEPT_BATCH):
                    try:
                        conn, _ = sock.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as exc:
                        if exc.errno not in _RESOURCE_ERRORS:
                            return  # closed under us: shutdown
                        self._logger.error("accept() failed: %s; retrying in 100 ms", exc)
                        await trio.sleep(0.1)
                        break
                    stream = trio.SocketStream(trio.socket.from_stdlib_socket(conn))
                    self._nursery.start_soon(serve_connection, stream, factory, self._logger, tls)

    def stop_listeners(self) -> None:
        for scope in self._accepting:
            scope.cancel()
        for sock in self._listening:
            # trio must hear of the close before the fd goes, or a waiting task never wakes.
            trio.lowlevel.notify_closing(sock)

    async def wait_for_signal(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            await trio.sleep_forever()
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                return
