"""trio's `Backend`: listeners, datagram endpoints, signals and the session nursery they live in."""

from __future__ import annotations

import errno
import signal
import threading
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

from multicorn.runtime.trio.runtime import TrioRuntime
from multicorn.runtime.trio.tcp import serve_connection
from multicorn.runtime.trio.udp import TrioDatagramEndpoint

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

# Out of file descriptors or memory: back off instead of spinning on accept().
_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_ACCEPT_BATCH = 1024


class SessionNotStarted(RuntimeError):
    """The backend was used outside `session()`, which owns every task it starts."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"TrioBackend.{what} needs a running session: use `async with backend.session():` first"
        )


class TrioBackend:
    """The trio backend; everything it starts runs in the nursery `session()` opens."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._accepting: list[trio.CancelScope] = []
        self._listening: list[socket.socket] = []
        self._preambles: set[trio.CancelScope] = set()  # connections reading their preamble
        self._endpoints: list[TrioDatagramEndpoint] = []
        self._nursery: trio.Nursery | None = None
        self._runtime: TrioRuntime | None = None

    @property
    def runtime(self) -> TrioRuntime:
        if self._runtime is None:
            raise SessionNotStarted("runtime")
        return self._runtime

    def _session_nursery(self, what: str) -> trio.Nursery:
        if self._nursery is None:
            raise SessionNotStarted(what)
        return self._nursery

    @asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._runtime = TrioRuntime(nursery, self._logger)
            try:
                yield
            finally:
                self.stop_listeners()
                self.close_datagram_endpoints()
                nursery.cancel_scope.cancel()

    async def start_listener(
        self,
        sock: socket.socket,
        factory: HandlerFactory,
        *,
        backlog: int,
        tls: ServerTLS | None,
        preamble: Preamble | None = None,
    ) -> None:
        nursery = self._session_nursery("start_listener")
        sock.listen(backlog)
        sock.setblocking(False)
        # The scope exists before the task starts, so stop_listeners() can never miss it.
        scope = trio.CancelScope()
        self._accepting.append(scope)
        self._listening.append(sock)
        nursery.start_soon(self._accept_loop, nursery, sock, factory, scope, tls, preamble)

    async def _accept_loop(
        self,
        nursery: trio.Nursery,
        sock: socket.socket,
        factory: HandlerFactory,
        scope: trio.CancelScope,
        tls: ServerTLS | None,
        preamble: Preamble | None,
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
                    reading = None if preamble is None else (preamble, conn, self._preambles)
                    nursery.start_soon(
                        serve_connection, stream, factory, self._logger, tls, reading
                    )

    async def start_datagram_endpoint(
        self, sock: socket.socket, factory: DatagramHandlerFactory
    ) -> None:
        nursery = self._session_nursery("start_datagram_endpoint")
        endpoint = TrioDatagramEndpoint(sock, self._logger)
        endpoint.start(factory, self.runtime, nursery)
        self._endpoints.append(endpoint)

    def stop_listeners(self) -> None:
        for scope in self._accepting:
            scope.cancel()
        self._accepting.clear()
        for scope in self._preambles:
            scope.cancel()  # not yet connections: they go with their listener
        for sock in self._listening:
            # trio must hear of the close before the fd goes, or a waiting task never wakes.
            trio.lowlevel.notify_closing(sock)
        self._listening.clear()

    def close_datagram_endpoints(self) -> None:
        for endpoint in self._endpoints:
            endpoint.close()
        self._endpoints.clear()

    async def wait_for_signal(self, on_hangup: Callable[[], object] | None = None) -> None:
        if threading.current_thread() is not threading.main_thread():
            await trio.sleep_forever()  # no signals off the main thread: wait to be cancelled
        wanted: list[int] = [signal.SIGINT, signal.SIGTERM]
        if on_hangup is not None and hasattr(signal, "SIGHUP"):
            wanted.append(signal.SIGHUP)
        with trio.open_signal_receiver(*wanted) as signals:
            async for signum in signals:
                if on_hangup is not None and signum == getattr(signal, "SIGHUP", None):
                    on_hangup()
                    continue
                return
