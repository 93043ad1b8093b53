"""The one ASGI application every benchmarked server runs: `bench.apps:app`.

This module owns the routes the scenarios load, kept identical across servers so that only the
server differs:

- `GET /10k`: a 10240-byte body with Content-Length;
- `GET /small`: `Hello world` (11 bytes);
- `POST /echo`: reads the whole request body, then sends it back with Content-Length;
- `GET /sleep`: waits 10 ms (`asyncio.sleep` or `trio.sleep`, picked with sniffio), then `ok`;
- `GET /count`: how many `GET /10k` responses this process has sent whole, per HTTP version, as
  JSON (`{"1.1": 0, "2": 0, "3": 5120}`): the h3-get scenario's count of successes, since its
  client (gtlsclient) prints nothing per request when quiet;
- WebSocket `/ws`: echoes every text or binary message (for servers that speak WebSocket);
- lifespan: acknowledged, for servers that run it.

Anything else answers 404. Responses are built once at import so the app costs as little as
possible per request: the benchmark measures servers, not this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

try:
    import sniffio
except ImportError:  # pragma: no cover - every venv the suite builds has sniffio
    sniffio = None  # type: ignore[assignment]

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

BODY_10K = b"x" * 10240
BODY_SMALL = b"Hello world"
BODY_OK = b"ok"
SLEEP_SECONDS = 0.01


def _start(length: int, content_type: bytes = b"text/plain", status: int = 200) -> Message:
    return {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", content_type),
            (b"content-length", str(length).encode("ascii")),
        ],
    }


_START_10K = _start(len(BODY_10K))
_START_SMALL = _start(len(BODY_SMALL))
_START_OK = _start(len(BODY_OK))
_START_404 = _start(9, status=404)
_BODY_10K = {"type": "http.response.body", "body": BODY_10K}
_BODY_SMALL = {"type": "http.response.body", "body": BODY_SMALL}
_BODY_OK = {"type": "http.response.body", "body": BODY_OK}
_BODY_404 = {"type": "http.response.body", "body": b"not found"}


# GET /10k responses sent whole, per `http_version` ("1.1", "2", "3"): one dict update per
# request, the same in every server, read through GET /count.
_SENT_10K: dict[str, int] = {}


def _count_response() -> Message:
    body = json.dumps(_SENT_10K, sort_keys=True).encode("ascii")
    return {"type": "http.response.body", "body": body}


def _sleep(seconds: float) -> Awaitable[None]:
    """Sleep on whichever async library runs this request (trio under `-k trio`)."""
    library = "asyncio"
    if sniffio is not None:
        with contextlib.suppress(sniffio.AsyncLibraryNotFoundError):
            library = sniffio.current_async_library()
    if library == "trio":
        import trio

        return trio.sleep(seconds)
    return asyncio.sleep(seconds)


async def _http(scope: Scope, receive: Receive, send: Send) -> None:
    path = scope["path"]
    method = scope["method"]
    if method == "GET" and path == "/10k":
        await send(_START_10K)
        await send(_BODY_10K)
        version = scope.get("http_version", "1.1")
        _SENT_10K[version] = _SENT_10K.get(version, 0) + 1
    elif method == "GET" and path == "/small":
        await send(_START_SMALL)
        await send(_BODY_SMALL)
    elif method == "POST" and path == "/echo":
        chunks = []
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        await send(_start(len(body), b"application/octet-stream"))
        await send({"type": "http.response.body", "body": body})
    elif method == "GET" and path == "/count":
        body = _count_response()
        await send(_start(len(body["body"]), b"application/json"))
        await send(body)
    elif method == "GET" and path == "/sleep":
        await _sleep(SLEEP_SECONDS)
        await send(_START_OK)
        await send(_BODY_OK)
    else:
        await send(_START_404)
        await send(_BODY_404)


async def _websocket(scope: Scope, receive: Receive, send: Send) -> None:
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    if scope["path"] != "/ws":
        await send({"type": "websocket.close", "code": 1008})
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.receive":
            text = message.get("text")
            if text is not None:
                await send({"type": "websocket.send", "text": text})
            else:
                await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})
        elif message["type"] == "websocket.disconnect":
            return


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI 3 application."""
    kind = scope["type"]
    if kind == "http":
        await _http(scope, receive, send)
    elif kind == "websocket":
        await _websocket(scope, receive, send)
    elif kind == "lifespan":
        await _lifespan(receive, send)
