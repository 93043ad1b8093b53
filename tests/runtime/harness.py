"""What the runtime contract suite drives a backend with: recording handlers and servers.

The handlers record every call a backend makes, in order, and let a test act as the handler
would (write, close, abort, set deadlines) through the transport they were given. Clients are
plain anyio sockets, so they work on every event loop the suite runs on.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from multicorn.net.binds import parse_bind
from multicorn.net.sockets import create_datagram_socket, create_socket
from multicorn.runtime.base import Backend, ConnectionDetails, Preamble, ServerTLS

LOGGER = logging.getLogger("tests.runtime")

# Generous: the suite must hold on a loaded 2-core CI machine.
PATIENCE = 5.0


async def eventually(condition: Callable[[], bool], what: str, timeout: float = PATIENCE) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    with anyio.move_on_after(timeout):
        while not condition():
            await anyio.sleep(0.005)
        return
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def turns(n: int = 10) -> None:
    """Let the event loop run a few rounds."""
    for _ in range(n):
        await anyio.sleep(0)


@dataclass
class StreamRecorder:
    """A fake `Handler`: records each call as (name, value) and exposes the transport."""

    transport: Any
    runtime: Any
    details: ConnectionDetails
    calls: list[tuple[str, object]] = field(default_factory=list)
    received: bytearray = field(default_factory=bytearray)
    # Hooks a test may set to act from inside a callback, as a real handler does.
    on_data: Callable[[bytes], None] | None = None
    on_deadline: Callable[[], None] | None = None

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def count(self, name: str) -> int:
        return self.names().count(name)

    def data_received(self, data: bytes) -> None:
        assert isinstance(data, bytes)
        self.calls.append(("data", data))
        self.received += data
        if self.on_data is not None:
            self.on_data(data)

    def eof_received(self) -> None:
        self.calls.append(("eof", None))

    def deadline_reached(self) -> None:
        self.calls.append(("deadline", self.runtime.now()))
        if self.on_deadline is not None:
            self.on_deadline()

    def pause_writing(self) -> None:
        self.calls.append(("pause", None))

    def resume_writing(self) -> None:
        self.calls.append(("resume", None))

    def connection_lost(self) -> None:
        self.calls.append(("lost", None))


@dataclass
class DatagramRecorder:
    """A fake `DatagramHandler`; by default it echoes each datagram upper-cased."""

    transport: Any
    runtime: Any
    datagrams: list[tuple[bytes, Any]] = field(default_factory=list)
    lost: int = 0
    echo: bool = True
    batches: list[int] = field(default_factory=list)  # datagrams seen at each batch_done()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert isinstance(data, bytes)
        self.datagrams.append((data, addr))
        if self.echo:
            self.transport.sendto(data.upper(), addr)

    def batch_done(self) -> None:
        self.batches.append(len(self.datagrams))

    def connection_lost(self) -> None:
        self.lost += 1


@dataclass
class StreamServer:
    """A listener of the backend under test, and the handlers of the connections it accepted."""

    sock: socket.socket
    handlers: list[StreamRecorder] = field(default_factory=list)

    async def connect(self) -> anyio.abc.SocketStream:
        address = self.sock.getsockname()
        if self.sock.family == socket.AF_UNIX:
            return await anyio.connect_unix(address)
        return await anyio.connect_tcp(address[0], address[1])

    async def accepted(self, index: int = 0) -> StreamRecorder:
        await eventually(lambda: len(self.handlers) > index, f"connection {index} accepted")
        return self.handlers[index]


@dataclass
class BackendUnderTest:
    name: str
    make: Callable[[logging.Logger], Backend]

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Backend]:
        """Make the backend inside the running loop and hold a session open."""
        backend = self.make(LOGGER)
        async with backend.session():
            yield backend


@contextlib.asynccontextmanager
async def stream_server(
    backend: Backend,
    bind: str = "127.0.0.1:0",
    tls: ServerTLS | None = None,
    preamble: Preamble | None = None,
) -> AsyncIterator[StreamServer]:
    sock = create_socket(parse_bind(bind), backlog=16)
    server = StreamServer(sock)

    def factory(transport: Any, runtime: Any, details: ConnectionDetails) -> StreamRecorder:
        handler = StreamRecorder(transport, runtime, details)
        server.handlers.append(handler)
        return handler

    try:
        await backend.start_listener(sock, factory, backlog=16, tls=tls, preamble=preamble)
        yield server
    finally:
        backend.stop_listeners()
        sock.close()


@contextlib.asynccontextmanager
async def datagram_endpoint(
    backend: Backend, bind: str = "127.0.0.1:0"
) -> AsyncIterator[tuple[socket.socket, list[DatagramRecorder]]]:
    sock = create_datagram_socket(parse_bind(bind))
    handlers: list[DatagramRecorder] = []

    def factory(transport: Any, runtime: Any) -> DatagramRecorder:
        handler = DatagramRecorder(transport, runtime)
        handlers.append(handler)
        return handler

    try:
        await backend.start_datagram_endpoint(sock, factory)
        yield sock, handlers
    finally:
        backend.close_datagram_endpoints()


async def read_until_eof(
    stream: anyio.abc.ByteStream, timeout: float = PATIENCE
) -> tuple[bytes, str]:
    """Everything the peer sends, and how it ended: "eof" or "reset"."""
    chunks: list[bytes] = []
    with anyio.fail_after(timeout):
        while True:
            try:
                chunks.append(await stream.receive(1 << 20))
            except anyio.EndOfStream:
                return b"".join(chunks), "eof"
            except (anyio.BrokenResourceError, ConnectionResetError):
                return b"".join(chunks), "reset"


def ipv6_loopback_works() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True
