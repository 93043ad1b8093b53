"""The ASGI application the Autobahn fuzzing client talks to.

This module owns the echo behaviour the testsuite expects from a server under test: every
WebSocket text or binary message comes back unchanged and as the same type. A plain HTTP request
gets a short 200, so a readiness probe or a curious browser sees something, and the lifespan
protocol is acknowledged so servers that insist on it start cleanly. It imports nothing from
multicorn, so the same app runs unchanged on any ASGI server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

HTTP_BODY = b"Autobahn echo app: connect over WebSocket.\n"


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Echo WebSocket messages, answer HTTP with a 200, acknowledge lifespan events."""
    kind = scope["type"]
    if kind == "websocket":
        await _echo(receive, send)
    elif kind == "http":
        await _hello(receive, send)
    elif kind == "lifespan":
        await _lifespan(receive, send)


async def _echo(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif kind == "websocket.receive":
            # A message carries exactly one of the two keys; the other may be absent or None.
            text = message.get("text")
            if text is not None:
                await send({"type": "websocket.send", "text": text})
            else:
                await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})
        elif kind == "websocket.disconnect":
            return


async def _hello(receive: Receive, send: Send) -> None:
    # Drain the request body first, so a server that waits for it is not left hanging.
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            break
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(HTTP_BODY)).encode("ascii")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": HTTP_BODY})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
