"""ASGI type definitions (ASGI 3, www spec 2.5, lifespan spec 2.0), in one place."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Literal, TypedDict

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ASGIVersions(TypedDict):
    version: str
    spec_version: str


class _RequestScope(TypedDict):
    """What the `http` and `websocket` scopes share: the request that opened the stream."""

    asgi: ASGIVersions
    http_version: str
    scheme: str
    path: str
    raw_path: bytes
    query_string: bytes
    root_path: str
    headers: Iterable[tuple[bytes, bytes]]
    client: tuple[str, int] | None
    server: tuple[str, int | None] | None
    state: dict[str, Any]
    extensions: dict[str, dict[str, object]]


class HTTPScope(_RequestScope):
    type: Literal["http"]
    method: str


class WebSocketScope(_RequestScope):
    type: Literal["websocket"]
    subprotocols: list[str]
