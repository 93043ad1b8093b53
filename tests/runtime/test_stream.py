"""The contract of stream connections (`Transport` and `Handler`), on every backend.

Each test starts a real listener of the backend under test on loopback, connects a plain client,
and checks what the recording handler was told and what the client saw.
"""

from __future__ import annotations

import socket
import ssl
import struct
import sys

import anyio
import pytest

from multicorn.net.tls import TLSInfo
from multicorn.runtime.base import LINGER_TIME, ServerTLS

from .harness import (
    BackendUnderTest,
    eventually,
    ipv6_loopback_works,
    read_until_eof,
    stream_server,
    turns,
)

pytestmark = pytest.mark.anyio

BINDS = [
    pytest.param("127.0.0.1:0", id="ipv4"),
    pytest.param(
        "[::1]:0",
        id="ipv6",
        marks=pytest.mark.skipif(not ipv6_loopback_works(), reason="no IPv6 loopback"),
    ),
    pytest.param(
        "unix", id="unix", marks=pytest.mark.skipif(sys.platform == "win32", reason="no AF_UNIX")
    ),
]


@pytest.fixture(params=BINDS)
def bind(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "unix":
        # A short path: unix socket paths are limited to about 100 bytes.
        return f"unix:{tmp_path_factory.mktemp('rt')}/s"
    return request.param


async def test_bytes_both_ways_then_close_on_every_kind_of_socket(
    backend: BackendUnderTest, bind: str
):
    async with (
        backend.running() as b,
        stream_server(b, bind) as server,
        await server.connect() as client,
    ):
        handler = await server.accepted()
        details = handler.details
        assert details.tls is None
        if bind.startswith("unix:"):
            assert details.sockname == bind[len("unix:") :]
        else:
            local = client.extra(anyio.abc.SocketAttribute.local_address)
            remote = client.extra(anyio.abc.SocketAttribute.remote_address)
            assert tuple(details.peername[:2]) == tuple(local[:2])
            assert tuple(details.sockname[:2]) == tuple(remote[:2])
        assert isinstance(handler.transport.closes_by_itself, bool)

        await client.send(b"ping")
        await eventually(lambda: handler.received == b"ping", "ping received")
        handler.transport.write(b"pong")
        assert await client.receive() == b"pong"
        handler.transport.close()
        data, how = await read_until_eof(client)
    assert (data, how) == (b"", "eof")
    await eventually(lambda: handler.count("lost") == 1, "connection_lost")
    assert handler.names()[-1] == "lost"


async def test_write_order_is_preserved_across_many_writes_and_loop_turns(
    backend: BackendUnderTest,
):
    pieces = [struct.pack(">I", i) * (1 + i % 97) for i in range(5000)]
    expected = b"".join(pieces)
    async with backend.running() as b, stream_server(b) as server, await server.connect() as client:
        handler = await server.accepted()

        async def writer() -> None:
            for index, piece in enumerate(pieces):
                handler.transport.write(piece)
                if index % 7 == 0:
                    await anyio.sleep(0)  # some writes in one turn, some across turns
            handler.transport.close()

        handler.runtime.spawn(writer)
        data, how = await read_until_eof(client)
    assert how == "eof"
    assert data == expected


async def test_write_backpressure_pauses_while_the_client_does_not_read(
    backend: BackendUnderTest,
):
    chunk = b"x" * 65536
    async with backend.running() as b, stream_server(b) as server, await server.connect() as client:
        handler = await server.accepted()
        written = 0
        stop = False

        def flow() -> list[str]:
            return [name for name in handler.names() if name in ("pause", "resume")]

        def paused() -> bool:
            return bool(flow()) and flow()[-1] == "pause"

        async def producer() -> None:
            # As app/ does: write while resumed, wait while paused.
            nonlocal written
            while not stop:
                if paused():
                    await anyio.sleep(0.005)
                    continue
                assert written < 256 * 1024 * 1024, "pause_writing never came"
                handler.transport.write(chunk)
                written += len(chunk)
                await anyio.sleep(0)

        handler.runtime.spawn(producer)
        # A backend may pause and resume while the kernel still takes bytes; once its buffers
        # are full, it must stay paused for as long as the client does not read.
        await eventually(paused, "pause_writing")
        with anyio.fail_after(30):
            while True:
                before = written
                await anyio.sleep(0.3)
                if paused() and written == before:
                    break
        stop = True
        await turns()
        assert paused()

        received = 0
        with anyio.fail_after(30):
            while received < written:
                received += len(await client.receive(1 << 20))
        await eventually(lambda: not paused(), "resume_writing")
    assert received == written
    # Strictly alternating, starting with a pause.
    assert flow() == ["pause", "resume"] * (len(flow()) // 2)


async def test_close_after_a_big_write_delivers_everything_then_eof(backend: BackendUnderTest):
    payload = bytes(range(256)) * (8 * 4096)  # 8 MiB, far beyond every buffer
    async with backend.running() as b, stream_server(b) as server, await server.connect() as client:
        handler = await server.accepted()
        handler.transport.write(payload)
        handler.transport.close()
        data, how = await read_until_eof(client, timeout=30)
        await eventually(lambda: handler.count("lost") == 1, "connection_lost")
    assert how == "eof"
    assert data == payload
    assert handler.count("lost") == 1


async def test_close_stops_data_received(backend: BackendUnderTest):
    async with backend.running() as b, stream_server(b) as server, await server.connect() as client:
        handler = await server.accepted()
        handler.transport.close()
        await read_until_eof(client)
        with pytest.raises((anyio.BrokenResourceError, ConnectionError, OSError)):
            # The peer is gone once its lingering ends (at most LINGER_TIME): the kernel
            # then refuses.
            for _ in range(int(LINGER_TIME * 100) + 200):
                await client.send(b"too late")
                await anyio.sleep(0.01)
        await eventually(lambda: handler.count("lost") == 1, "connection_lost")
    assert "data" not in handler.names()


async def test_abort_drops_the_socket_now_and_leaves_tasks_running(backend: BackendUnderTest):
    async with backend.running() as b, stream_server(b) as server, await server.connect() as client:
        handler = await server.accepted()
        runtime = handler.runtime
        release = runtime.waiter()
        progress: list[str] = []

        async def app_task() -> None:
            progress.append("started")
            await release.wait()
            await anyio.sleep(0.01)  # and it may still await after the socket is gone
            progress.append("finished")

        runtime.spawn(app_task)
        await eventually(lambda: progress == ["started"], "the task to start")
        # Far more than the kernel buffers hold while the client is not reading.
        handler.transport.write(b"y" * (64 * 1024 * 1024))
        handler.transport.abort()
        assert "lost" not in handler.names(), "connection_lost must come later, not inside"

        data, _how = await read_until_eof(client)
        assert len(data) < 64 * 1024 * 1024
        await eventually(lambda: handler.count("lost") == 1, "connection_lost")
        await turns()
        assert progress == ["started"], "abort() must not cancel the connection's tasks"
        release.set()
        await eventually(lambda: progress == ["started", "finished"], "the task to finish")
        handler.transport.close()  # harmless after abort
        await turns()
    assert handler.count("lost") == 1
    assert "data" not in handler.names()


async def test_peer_reset_reports_connection_lost_once(backend: BackendUnderTest):
    async with backend.running() as b, stream_server(b) as server:
        raw = socket.create_connection(server.sock.getsockname()[:2])
        handler = await server.accepted()
        # SO_LINGER 0: close() sends RST instead of FIN.
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()
        await eventually(lambda: handler.count("lost") == 1, "connection_lost")
        await turns()
    assert handler.count("lost") == 1


async def test_half_close_reports_eof_and_the_server_can_still_write(backend: BackendUnderTest):
    async with backend.running() as b, stream_server(b) as server, await server.connect() as client:
        handler = await server.accepted()
        await client.send(b"request")
        await client.send_eof()
        await eventually(lambda: "eof" in handler.names(), "eof_received")
        assert handler.received == b"request"
        assert [name for name in handler.names() if name != "data"] == ["eof"]
        await turns()
        assert "lost" not in handler.names()
        handler.transport.write(b"response")
        handler.transport.close()
        data, how = await read_until_eof(client)
    assert (data, how) == (b"response", "eof")
    await eventually(lambda: handler.count("lost") == 1, "connection_lost")
    assert handler.names().count("eof") == 1


async def test_set_reading_false_stops_data_received_and_true_resumes(backend: BackendUnderTest):
    async with backend.running() as b, stream_server(b) as server, await server.connect() as client:
        handler = await server.accepted()
        # As app/ does: stop reading from inside data_received.
        handler.on_data = lambda data: handler.transport.set_reading(False)
        await client.send(b"first")
        await eventually(lambda: handler.received == b"first", "first data")
        await client.send(b"second")
        await anyio.sleep(0.3)
        assert handler.received == b"first"
        handler.on_data = None
        handler.transport.set_reading(True)
        await eventually(lambda: handler.received == b"firstsecond", "data after resuming")
        handler.transport.set_reading(True)  # idempotent
        handler.transport.close()
        await read_until_eof(client)


async def test_deadline_fires_once_at_about_its_time(backend: BackendUnderTest):
    async with backend.running() as b, stream_server(b) as server, await server.connect():
        handler = await server.accepted()
        now = handler.runtime.now()
        handler.transport.set_deadline(now + 0.2)
        await eventually(lambda: "deadline" in handler.names(), "deadline_reached")
        fired_at = handler.calls[handler.names().index("deadline")][1]
        assert now + 0.19 <= fired_at < now + 0.2 + 2.0
        await anyio.sleep(0.3)
        assert handler.count("deadline") == 1


async def test_rearming_a_deadline_moves_it(backend: BackendUnderTest):
    async with backend.running() as b, stream_server(b) as server, await server.connect():
        handler = await server.accepted()
        runtime, transport = handler.runtime, handler.transport
        now = runtime.now()
        transport.set_deadline(now + 0.1)
        transport.set_deadline(now + 0.4)  # later
        await eventually(lambda: "deadline" in handler.names(), "the later deadline")
        assert handler.calls[-1][1] >= now + 0.39
        now = runtime.now()
        transport.set_deadline(now + 5)
        transport.set_deadline(now + 0.1)  # earlier
        await eventually(lambda: handler.count("deadline") == 2, "the earlier deadline")
        assert handler.calls[-1][1] < now + 4
        await anyio.sleep(0.2)
        assert handler.count("deadline") == 2


async def test_none_disarms_the_deadline(backend: BackendUnderTest):
    async with backend.running() as b, stream_server(b) as server, await server.connect():
        handler = await server.accepted()
        handler.transport.set_deadline(handler.runtime.now() + 0.1)
        handler.transport.set_deadline(None)
        await anyio.sleep(0.4)
        assert "deadline" not in handler.names()


async def test_a_deadline_rearmed_from_deadline_reached_fires_again(backend: BackendUnderTest):
    async with backend.running() as b, stream_server(b) as server, await server.connect():
        handler = await server.accepted()

        def rearm_once() -> None:
            if handler.count("deadline") == 1:
                handler.transport.set_deadline(handler.runtime.now() + 0.05)

        handler.on_deadline = rearm_once
        handler.transport.set_deadline(handler.runtime.now() + 0.05)
        await eventually(lambda: handler.count("deadline") == 2, "two deadlines")
        await anyio.sleep(0.2)
        assert handler.count("deadline") == 2


async def test_deadline_does_not_fire_after_the_connection_is_gone(backend: BackendUnderTest):
    async with backend.running() as b, stream_server(b) as server, await server.connect():
        handler = await server.accepted()
        handler.transport.set_deadline(handler.runtime.now() + 0.2)
        handler.transport.abort()
        await eventually(lambda: handler.count("lost") == 1, "connection_lost")
        await anyio.sleep(0.4)
    assert "deadline" not in handler.names()


async def test_tls_details_reach_the_factory_as_a_neutral_record(
    backend: BackendUnderTest, server_tls_context: tuple[ssl.SSLContext, ssl.SSLContext]
):
    server_context, client_context = server_tls_context
    described: list[object] = []

    def describe(obj: ssl.SSLObject) -> TLSInfo:
        described.append(obj)
        return TLSInfo(tls_version=0x0304, alpn=obj.selected_alpn_protocol())

    tls = ServerTLS(context=server_context, handshake_timeout=5.0, describe=describe)
    payload = b"z" * 300_000
    async with backend.running() as b, stream_server(b, tls=tls) as server:
        host, port = server.sock.getsockname()[:2]
        async with await anyio.connect_tcp(host, port, ssl_context=client_context) as client:
            handler = await server.accepted()
            assert handler.details.tls == TLSInfo(tls_version=0x0304, alpn="http/1.1")
            assert len(described) == 1 and isinstance(described[0], ssl.SSLObject)
            await client.send(b"hello over tls")
            await eventually(lambda: handler.received == b"hello over tls", "tls data")
            handler.transport.write(payload)
            handler.transport.close()
            data, _ = await read_until_eof(client)
    assert data == payload
    await eventually(lambda: handler.count("lost") == 1, "connection_lost")


async def test_a_failed_tls_handshake_never_reaches_the_factory(
    backend: BackendUnderTest, server_tls_context: tuple[ssl.SSLContext, ssl.SSLContext]
):
    server_context, _ = server_tls_context
    tls = ServerTLS(context=server_context, handshake_timeout=5.0, describe=lambda obj: TLSInfo())
    async with (
        backend.running() as b,
        stream_server(b, tls=tls) as server,
        await server.connect() as client,
    ):
        await client.send(b"GET / HTTP/1.1\r\n\r\n")  # not a TLS ClientHello
        await read_until_eof(client)
        await turns()
    assert server.handlers == []


async def test_stop_listeners_refuses_new_connections_but_keeps_open_ones(
    backend: BackendUnderTest,
):
    async with backend.running() as b, stream_server(b) as server, await server.connect() as client:
        handler = await server.accepted()
        b.stop_listeners()
        server.sock.close()
        await turns()
        with pytest.raises(OSError):
            await server.connect()
        await client.send(b"still here")
        await eventually(lambda: handler.received == b"still here", "data after stop")
        handler.transport.close()
        await read_until_eof(client)


@pytest.mark.parametrize("turns_before_stop", [0, 1, 2, 3])
async def test_a_connection_accepted_as_the_listener_stops_is_still_served(
    backend: BackendUnderTest, turns_before_stop: int
):
    # Stopping (a graceful shutdown, a reload) catches connections somewhere between the
    # kernel's queue and the handler; an accepted one must be served, not dropped unanswered.
    async with backend.running() as b, stream_server(b) as server:
        client = socket.create_connection(server.sock.getsockname())
        try:
            await turns(turns_before_stop)
            b.stop_listeners()
            await turns()
            if server.handlers:
                client.sendall(b"ping")
                handler = server.handlers[0]
                await eventually(lambda: handler.received == b"ping", "data after stop")
            else:  # never taken from the kernel's queue: reset when the socket closes
                server.sock.close()
                client.settimeout(5)
                with pytest.raises(ConnectionResetError):
                    client.recv(1)
        finally:
            client.close()


async def test_every_pending_connection_is_accepted_in_a_few_loop_turns(
    backend: BackendUnderTest,
):
    # One accept per loop turn (libuv's, trio's SocketListener) keeps a burst of new clients
    # queued behind busy connections for seconds: the count must not grow with the burst.
    pending = 12  # within the harness's backlog of 16
    async with backend.running() as b, stream_server(b) as server:
        clients = [socket.create_connection(server.sock.getsockname()) for _ in range(pending)]
        try:
            # The kernel completed every handshake above; the loop has not run since.
            await turns(6)
            assert len(server.handlers) == pending
        finally:
            for client in clients:
                client.close()


async def test_close_lingers_so_a_client_still_sending_reads_the_whole_answer(
    backend: BackendUnderTest, bind: str
):
    # RFC 9112 9.6: a server that closes while the client is still sending must not let its
    # TCP stack answer the unread bytes with a reset, which can destroy the response in the
    # client's receive buffer before the client reads it. close() half-closes, then reads and
    # discards for a bounded time before the socket goes.
    answer = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\n\r\n"
    async with backend.running() as b, stream_server(b, bind) as server:
        for attempt in range(3):
            async with await server.connect() as client:
                await client.send(b"GET / HTTP/1.1\r\n" + b"x" * 1024)
                handler = await server.accepted(attempt)

                def answer_and_close(data: bytes, handler=handler) -> None:
                    if handler.transport is not None and handler.count("data") == 1:
                        handler.transport.write(answer)
                        handler.transport.close()

                handler.on_data = answer_and_close
                if handler.count("data"):
                    answer_and_close(b"")
                # Still sending when the answer goes out: 1 MiB the server never reads.
                chunk = b"y" * 65536
                for _ in range(16):
                    await client.send(chunk)
                data, how = await read_until_eof(client, timeout=10)
                assert data == answer
                assert how == "eof"
