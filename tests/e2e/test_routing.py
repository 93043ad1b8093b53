"""Streams reach the bridge for their kind, over real sockets on asyncio and trio.

With WebSocket switched off (`websocket=False`), a WebSocket handshake must be an ordinary ASGI
`http` request: the core reports it as a plain request and no 101 goes out. With it on (the
default), the same handshake reaches the `websocket` bridge.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from .h2client import H2Client
from .support import host_port, read_until, serving

pytestmark = pytest.mark.anyio


def scope_app(seen: list[dict[str, Any]]) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return
        seen.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["type"].encode()})

    return app


WEBSOCKET_HANDSHAKE = (
    b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def test_http11_websocket_handshake_is_a_plain_request_while_websocket_is_off() -> None:
    seen: list[dict[str, Any]] = []
    async with (
        serving(scope_app(seen), websocket=False) as server,
        await anyio.connect_tcp(*host_port(server)) as stream,
    ):
        await stream.send(WEBSOCKET_HANDSHAKE)
        data = await read_until(stream, b"\r\n\r\nhttp")
    assert data.startswith(b"HTTP/1.1 200 ")
    assert [scope["type"] for scope in seen] == ["http"]


async def test_http11_websocket_handshake_reaches_the_websocket_bridge() -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return
        seen.append(scope)
        assert await receive() == {"type": "websocket.connect"}
        await send({"type": "websocket.close"})

    async with (
        serving(app) as server,
        await anyio.connect_tcp(*host_port(server)) as stream,
    ):
        await stream.send(WEBSOCKET_HANDSHAKE)
        data = await read_until(stream, b"\r\n\r\n")
    # ASGI: a close before the accept is a denial, answered 403.
    assert data.startswith(b"HTTP/1.1 403 ")
    assert [(scope["type"], scope["path"]) for scope in seen] == [("websocket", "/chat")]


async def test_http2_requests_reach_the_http_bridge() -> None:
    seen: list[dict[str, Any]] = []
    async with serving(scope_app(seen)) as server:
        client = await H2Client.connect(*host_port(server))
        headers, body = await client.response(await client.request("/"))
        await client.aclose()
    assert headers[b":status"] == b"200" and body == b"http"
    assert [(scope["type"], scope["http_version"]) for scope in seen] == [("http", "2")]
