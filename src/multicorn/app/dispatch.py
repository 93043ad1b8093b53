"""Which ASGI bridge serves a stream: the shape every bridge has, and the table from the stream
kinds protocol cores report to the bridge that serves each one.

A protocol core says what a stream is (`RequestReceived.kind`); the connection handler looks the
kind up here and creates that bridge, which never learns the HTTP version carrying it. An
ordinary request gets `HTTPStream` (ASGI `http`), a WebSocket `WebSocketStream` (ASGI
`websocket`). A kind with no bridge is answered 501 by the handler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from multicorn.app.http import HTTPStream
from multicorn.app.websocket import WebSocketStream
from multicorn.protocol.events import StreamKind

if TYPE_CHECKING:
    from multicorn.app.connection import ConnectionHandler
    from multicorn.protocol.events import RequestReceived


class StreamBridge(Protocol):
    """One stream as the connection handler drives it. The handler calls the event methods
    synchronously as the protocol core reports events, and runs `run()` as the stream's task;
    when `run()` returns (or raises) the stream is over."""

    @property
    def stream_id(self) -> int: ...

    def data_received(self, data: bytes) -> None:
        """Bytes of the stream's body (or, on a tunnel, of its byte stream) arrived."""

    def ended(self) -> None:
        """The peer finished sending on this stream."""

    def client_gone(self) -> None:
        """The peer reset the stream or the connection is gone: nothing more goes out."""

    def abandon(self) -> None:
        """Something raised while this stream was being served: answer 500 if its response has
        not started, else reset it. Does nothing once the stream is finished or gone."""

    def going_away(self, restart: bool = False) -> None:
        """The server is shutting down gracefully: a stream that would otherwise run on
        (a WebSocket) starts to close; a request/response exchange just finishes. `restart`:
        another process takes over, so the client may come back at once."""

    async def run(self) -> None:
        """The application call for this stream."""


# Built by the connection handler from the request head that opened the stream.
BridgeFactory = Callable[["ConnectionHandler", "RequestReceived"], StreamBridge]


def default_bridges() -> dict[StreamKind, BridgeFactory]:
    """The bridges a server has unless told otherwise. A core reports WEBSOCKET streams only
    when its limits enable them."""
    return {StreamKind.REQUEST: HTTPStream, StreamKind.WEBSOCKET: WebSocketStream}
