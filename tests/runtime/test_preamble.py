"""Listener preambles (runtime/base.py `Preamble`, the PROXY protocol's transport): on every
backend, exactly the preamble's bytes are taken before TLS or the handler, wherever the peer
splits them; a refusal or a peer that never finishes costs that connection only."""

from __future__ import annotations

import ssl
from typing import Any

import anyio
import pytest
from anyio.streams.tls import TLSStream

from multicorn.net.tls import TLSInfo
from multicorn.runtime.base import Preamble, PreambleRefused, ServerTLS

from .harness import BackendUnderTest, eventually, read_until_eof, stream_server, turns

pytestmark = pytest.mark.anyio

HEADER = b"HELLO 12345\n"


def measure_hello(peername: Any, first: bytes) -> int | None:
    """A toy preamble: a line starting with HELLO, or nothing when the first byte is not H."""
    if not first.startswith(b"H"):
        return 0
    end = first.find(b"\n")
    if end < 0:
        return None
    if not first.startswith(b"HELLO "):
        raise PreambleRefused("not a hello")
    return end + 1


def preamble(timeout: float = 5.0) -> Preamble:
    return Preamble(measure=measure_hello, max_size=64, timeout=timeout)


@pytest.mark.parametrize("bind", ["127.0.0.1:0", "unix"])
async def test_the_preamble_is_taken_and_the_rest_reaches_the_handler(
    backend: BackendUnderTest, bind: str, tmp_path: Any
) -> None:
    where = f"unix:{tmp_path / 's.sock'}" if bind == "unix" else bind
    async with (
        backend.running() as b,
        stream_server(b, where, preamble=preamble()) as server,
        await server.connect() as client,
    ):
        await client.send(HEADER + b"the connection's own")
        handler = await server.accepted()
        assert handler.details.preamble == HEADER
        await eventually(lambda: handler.received == b"the connection's own", "the rest")


async def test_a_preamble_in_pieces_waits_for_its_end(backend: BackendUnderTest) -> None:
    async with (
        backend.running() as b,
        stream_server(b, preamble=preamble()) as server,
        await server.connect() as client,
    ):
        for piece in (HEADER[:3], HEADER[3:8], HEADER[8:] + b"x"):
            await client.send(piece)
            await anyio.sleep(0.03)
        handler = await server.accepted()
        assert handler.details.preamble == HEADER
        await eventually(lambda: handler.received == b"x", "the byte after")


async def test_no_preamble_takes_nothing(backend: BackendUnderTest) -> None:
    async with (
        backend.running() as b,
        stream_server(b, preamble=preamble()) as server,
        await server.connect() as client,
    ):
        await client.send(b"GET / HTTP/1.1\r\n")
        handler = await server.accepted()
        assert handler.details.preamble == b""
        await eventually(lambda: handler.received == b"GET / HTTP/1.1\r\n", "all of it")


@pytest.mark.parametrize("send", [b"HELP ME\n", b"H" * 100, b"", b"HELLO"])
async def test_refused_unfinished_or_silent_connections_close_and_others_go_on(
    backend: BackendUnderTest, send: bytes
) -> None:
    async with backend.running() as b, stream_server(b, preamble=preamble(0.3)) as server:
        async with await server.connect() as bad:
            await bad.send(send)
            data, _ = await read_until_eof(bad)
        assert data == b""
        await turns()
        assert server.handlers == []
        async with await server.connect() as good:
            await good.send(HEADER)
            handler = await server.accepted()
            assert handler.details.preamble == HEADER


async def test_the_preamble_comes_before_tls(
    backend: BackendUnderTest, server_tls_context: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_context, client_context = server_tls_context
    tls = ServerTLS(
        context=server_context,
        handshake_timeout=5.0,
        describe=lambda obj: TLSInfo(tls_version=0x0304, alpn=obj.selected_alpn_protocol()),
    )
    async with (
        backend.running() as b,
        stream_server(b, tls=tls, preamble=preamble()) as server,
        await server.connect() as tcp,
    ):
        await tcp.send(HEADER)
        client = await TLSStream.wrap(tcp, hostname="127.0.0.1", ssl_context=client_context)
        await client.send(b"over tls")
        handler = await server.accepted()
        assert handler.details.preamble == HEADER
        assert handler.details.tls is not None
        await eventually(lambda: handler.received == b"over tls", "tls data")


async def test_stop_listeners_drops_connections_still_reading_a_preamble(
    backend: BackendUnderTest,
) -> None:
    async with backend.running() as b, stream_server(b, preamble=preamble()) as server:
        async with await server.connect() as client:
            await client.send(b"HEL")
            await turns()
            b.stop_listeners()
            server.sock.close()
            data, _ = await read_until_eof(client)
        assert data == b"" and server.handlers == []
