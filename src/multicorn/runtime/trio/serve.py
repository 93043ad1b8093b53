"""trio's `Backend`: listeners, datagram endpoints, signals and the session nursery they live in."""

from __future__ import annotations

import contextlib
import signal
import threading
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

from multicorn.runtime.base import (
    ACCEPT_BACK_OFF,
    ACCEPT_BACK_OFF_SECONDS,
    ACCEPT_CLOSED,
    accept_pending,
)
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
        # While catching signals: the task that reads them, and what gives them back.
        self._signal_task: trio.CancelScope | None = None
        self._signal_receiver = contextlib.ExitStack()

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
                self.release_signals()
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
                accepted, then = accept_pending(sock, self._logger)
                reading = None if preamble is None else (preamble, self._preambles)
                for conn, _ in accepted:
                    nursery.start_soon(
                        serve_connection, conn, factory, self.runtime, nursery, tls, reading
                    )
                if then == ACCEPT_CLOSED:
                    return  # closed under us: shutdown
                if then == ACCEPT_BACK_OFF:
                    await trio.sleep(ACCEPT_BACK_OFF_SECONDS)

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

    def catch_signals(
        self, on_signal: Callable[[], object], on_hangup: Callable[[], object] | None = None
    ) -> None:
        if (
            self._signal_task is not None
            or threading.current_thread() is not threading.main_thread()
        ):
            return
        nursery = self._session_nursery("catch_signals")
        wanted = [signal.SIGINT, signal.SIGTERM]
        hangup = getattr(signal, "SIGHUP", None)
        if on_hangup is not None and hangup is not None:
            wanted.append(hangup)
        signals = self._signal_receiver.enter_context(trio.open_signal_receiver(*wanted))
        self._signal_task = scope = trio.CancelScope()

        async def deliver() -> None:
            with scope:
                async for signum in signals:
                    if on_hangup is not None and signum == hangup:
                        on_hangup()
                    else:
                        on_signal()

        nursery.start_soon(deliver)

    def release_signals(self) -> None:
        # trio's handlers come back, and a signal still queued is delivered to them: a second
        # SIGINT raises KeyboardInterrupt and a second SIGTERM ends the process.
        if self._signal_task is None:
            return
        self._signal_task.cancel()
        self._signal_task = None
        self._signal_receiver.close()
