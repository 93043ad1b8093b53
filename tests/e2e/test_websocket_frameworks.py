"""WebSocket applications written with frameworks, over HTTP/1.1 with the `websockets` client.

A Starlette WebSocket route (echo, and a denial through `send_denial_response`), on asyncio and
trio since Starlette runs on anyio; a Django Channels `AsyncWebsocketConsumer` behind
`ProtocolTypeRouter`/`URLRouter`, on asyncio only because Channels (through asgiref) schedules
its consumers with asyncio.
"""

from __future__ import annotations

from typing import Any

import pytest
import websockets.exceptions

from .support import serving
from .wsclient import connect, in_thread, ws_url

pytestmark = pytest.mark.anyio


def starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept(subprotocol="echo")
        async for text in websocket.iter_text():
            await websocket.send_text(f"{websocket.url.path}: {text}")

    async def deny(websocket: WebSocket) -> None:
        response = PlainTextResponse("members only", status_code=403, headers={"x-why": "test"})
        await websocket.send_denial_response(response)

    return Starlette(routes=[WebSocketRoute("/echo", echo), WebSocketRoute("/deny", deny)])


async def test_starlette_echo_and_denial() -> None:
    def echo(url: str) -> tuple[str | None, list[Any]]:
        with connect(url, subprotocols=["echo"]) as ws:
            replies = []
            for text in ("one", "two"):
                ws.send(text)
                replies.append(ws.recv(timeout=5))
            return ws.subprotocol, replies

    def deny(url: str) -> Any:
        with pytest.raises(websockets.exceptions.InvalidStatus) as info:
            connect(url)
        return info.value.response

    async with serving(starlette_app()) as server:
        subprotocol, replies = await in_thread(lambda: echo(ws_url(server, "/echo")))
        response = await in_thread(lambda: deny(ws_url(server, "/deny")))
    assert subprotocol == "echo"
    assert replies == ["/echo: one", "/echo: two"]
    assert response.status_code == 403
    assert response.headers["x-why"] == "test"
    assert response.body == b"members only"


def channels_app() -> Any:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            SECRET_KEY="multicorn-tests",
            INSTALLED_APPS=[],
            ALLOWED_HOSTS=["*"],
            USE_TZ=True,
        )
        django.setup()
    from channels.generic.websocket import AsyncWebsocketConsumer
    from channels.routing import ProtocolTypeRouter, URLRouter
    from django.urls import path

    class Echo(AsyncWebsocketConsumer):
        async def connect(self) -> None:
            await self.accept()

        async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None):
            room = self.scope["url_route"]["kwargs"]["room"]
            if text_data is not None:
                await self.send(text_data=f"{room}: {text_data}")
            else:
                await self.send(bytes_data=bytes_data)

    return ProtocolTypeRouter({"websocket": URLRouter([path("ws/<str:room>/", Echo.as_asgi())])})


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_channels_consumer_echo() -> None:
    def client(url: str) -> list[Any]:
        with connect(url) as ws:
            ws.send("hi")
            replies = [ws.recv(timeout=5)]
            ws.send(b"\x01\x02")
            replies.append(ws.recv(timeout=5))
            return replies

    # Channels' router has no lifespan application: the server must not insist on one.
    async with serving(channels_app(), lifespan="off") as server:
        replies = await in_thread(lambda: client(ws_url(server, "/ws/lobby/")))
    assert replies == ["lobby: hi", b"\x01\x02"]
