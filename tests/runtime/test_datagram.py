"""The contract of datagram endpoints (`DatagramTransport`, `DatagramHandler`), on every backend.

The recording handler echoes each datagram upper-cased through `sendto`, so each test checks
both directions with plain anyio UDP clients.
"""

from __future__ import annotations

import socket

import anyio
import pytest

from .harness import BackendUnderTest, datagram_endpoint, eventually, ipv6_loopback_works, turns

pytestmark = pytest.mark.anyio

FAMILIES = [
    pytest.param(("127.0.0.1:0", "127.0.0.1"), id="ipv4"),
    pytest.param(
        ("[::1]:0", "::1"),
        id="ipv6",
        marks=pytest.mark.skipif(not ipv6_loopback_works(), reason="no IPv6 loopback"),
    ),
]


async def _exchange(client: anyio.abc.UDPSocket, message: bytes, host: str, port: int) -> bytes:
    # UDP may drop; on loopback it does not, but a retry keeps the test honest about it.
    for _ in range(5):
        await client.sendto(message, host, port)
        with anyio.move_on_after(1):
            data, _ = await client.receive()
            return data
    raise AssertionError(f"no answer to {message!r}")


@pytest.mark.parametrize("family", FAMILIES)
async def test_datagrams_both_ways_with_several_peers(
    backend: BackendUnderTest, family: tuple[str, str]
):
    bind, host = family
    async with backend.running() as b, datagram_endpoint(b, bind) as (sock, handlers):
        assert len(handlers) == 1, "the handler exists once start_datagram_endpoint returns"
        handler = handlers[0]
        port = sock.getsockname()[1]
        peers = [await anyio.create_udp_socket(local_host=host) for _ in range(3)]
        try:
            for round_ in range(3):
                for index, peer in enumerate(peers):
                    message = f"peer {index} round {round_}".encode()
                    assert await _exchange(peer, message, host, port) == message.upper()
            addresses = {addr[:2] for _, addr in handler.datagrams}
            assert addresses == {
                peer.extra(anyio.abc.SocketAttribute.local_address)[:2] for peer in peers
            }
        finally:
            for peer in peers:
                await peer.aclose()
    assert handler.lost == 1


async def test_datagram_boundaries_and_sizes_are_kept(backend: BackendUnderTest):
    async with backend.running() as b, datagram_endpoint(b) as (sock, handlers):
        handler = handlers[0]
        handler.echo = False
        port = sock.getsockname()[1]
        sizes = [0, 1, 1200, 1500, 9000, 65507]  # 65507: the largest IPv4 UDP payload
        # A plain socket: asyncio's transports (under anyio) silently skip empty datagrams.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            for size in sizes:
                peer.sendto(bytes([size % 251]) * size, ("127.0.0.1", port))
            await eventually(
                lambda: len(handler.datagrams) == len(sizes),
                f"every datagram; got sizes {[len(data) for data, _ in handler.datagrams]}",
            )
    assert [len(data) for data, _ in handler.datagrams] == sizes


async def test_a_burst_of_datagrams_is_delivered(backend: BackendUnderTest):
    async with backend.running() as b, datagram_endpoint(b) as (sock, handlers):
        handler = handlers[0]
        handler.echo = False
        port = sock.getsockname()[1]
        async with await anyio.create_udp_socket(local_host="127.0.0.1") as peer:
            for index in range(200):  # well within the default receive buffer
                await peer.sendto(b"%d" % index, "127.0.0.1", port)
            await eventually(lambda: len(handler.datagrams) == 200, "the whole burst")
    assert [data for data, _ in handler.datagrams] == [b"%d" % i for i in range(200)]


async def test_the_endpoint_may_send_first_and_to_any_peer(backend: BackendUnderTest):
    async with backend.running() as b, datagram_endpoint(b) as (sock, handlers):
        handler = handlers[0]
        port = sock.getsockname()[1]
        async with await anyio.create_udp_socket(local_host="127.0.0.1") as peer:
            address = peer.extra(anyio.abc.SocketAttribute.local_address)
            handler.transport.sendto(b"server speaks first", address)
            with anyio.fail_after(5):
                data, (_, from_port) = await peer.receive()
    assert data == b"server speaks first"
    assert from_port == port


async def test_a_handler_exception_costs_one_datagram_not_the_endpoint(
    backend: BackendUnderTest,
):
    async with backend.running() as b, datagram_endpoint(b) as (sock, handlers):
        handler = handlers[0]
        port = sock.getsockname()[1]
        original = handler.datagram_received

        def fragile(data: bytes, addr: object) -> None:
            if data == b"poison":
                handler.datagrams.append((data, addr))
                raise ValueError("a bug in the datagram handler")
            original(data, addr)

        handler.datagram_received = fragile  # type: ignore[method-assign]
        async with await anyio.create_udp_socket(local_host="127.0.0.1") as peer:
            await peer.sendto(b"poison", "127.0.0.1", port)
            await eventually(lambda: len(handler.datagrams) == 1, "the poison")
            await turns()
            assert await _exchange(peer, b"still alive", "127.0.0.1", port) == b"STILL ALIVE"


async def test_close_reports_connection_lost_once_and_sendto_is_then_harmless(
    backend: BackendUnderTest,
):
    async with backend.running() as b, datagram_endpoint(b) as (sock, handlers):
        handler = handlers[0]
        handler.transport.close()
        await eventually(lambda: handler.lost == 1, "connection_lost")
        handler.transport.sendto(b"too late", ("127.0.0.1", 9))
        handler.transport.close()
        await turns()
        assert sock.fileno() == -1, "closing the endpoint closes its socket"
    assert handler.lost == 1


async def test_stop_listeners_leaves_datagram_endpoints_serving(backend: BackendUnderTest):
    # QUIC connections live on the endpoint's socket: the graceful drain needs it open.
    async with backend.running() as b, datagram_endpoint(b) as (sock, handlers):
        handler = handlers[0]
        b.stop_listeners()
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            client.sendto(b"still here", sock.getsockname())
            await eventually(lambda: handler.datagrams, "a datagram after stop_listeners()")
        finally:
            client.close()
        assert handler.lost == 0


async def test_close_datagram_endpoints_closes_them(backend: BackendUnderTest):
    async with backend.running() as b, datagram_endpoint(b) as (sock, handlers):
        handler = handlers[0]
        b.close_datagram_endpoints()
        await eventually(lambda: handler.lost == 1, "connection_lost")
        port = sock.getsockname()[1] if sock.fileno() != -1 else None
        assert port is None
    assert handler.lost == 1


async def test_the_session_end_closes_datagram_endpoints(backend: BackendUnderTest):
    async with backend.running() as b:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        handlers = []

        def factory(transport, runtime):
            from .harness import DatagramRecorder

            handler = DatagramRecorder(transport, runtime)
            handlers.append(handler)
            return handler

        await b.start_datagram_endpoint(sock, factory)
        assert handlers[0].lost == 0
    assert handlers[0].lost == 1


async def test_a_datagram_handler_keeps_one_deadline_per_peer_with_call_at(
    backend: BackendUnderTest,
):
    """What the QUIC endpoint will do: one timer per peer, re-armed on each datagram."""
    async with backend.running() as b, datagram_endpoint(b) as (sock, handlers):
        handler = handlers[0]
        handler.echo = False
        runtime = handler.runtime
        timers: dict[object, object] = {}
        expired: list[object] = []

        original = handler.datagram_received

        def with_idle_timer(data: bytes, addr: object) -> None:
            original(data, addr)
            key = tuple(addr)[:2]  # type: ignore[arg-type]
            old = timers.pop(key, None)
            if old is not None:
                old.cancel()  # type: ignore[attr-defined]
            timers[key] = runtime.call_at(runtime.now() + 0.3, lambda: expired.append(key))

        handler.datagram_received = with_idle_timer  # type: ignore[method-assign]
        port = sock.getsockname()[1]
        async with (
            await anyio.create_udp_socket(local_host="127.0.0.1") as busy,
            await anyio.create_udp_socket(local_host="127.0.0.1") as idle,
        ):
            await idle.sendto(b"hello", "127.0.0.1", port)
            for _ in range(8):  # keeps its timer moving for longer than the idle timeout
                await busy.sendto(b"ping", "127.0.0.1", port)
                await anyio.sleep(0.1)
            idle_address = idle.extra(anyio.abc.SocketAttribute.local_address)[:2]
            busy_address = busy.extra(anyio.abc.SocketAttribute.local_address)[:2]
            assert expired == [idle_address]
            await eventually(lambda: busy_address in expired, "the busy peer's timeout")
