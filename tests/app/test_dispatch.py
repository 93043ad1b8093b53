"""Routing streams by kind: the connection handler picks the bridge from `RequestReceived.kind`.

A fake protocol reports the events, so these tests do not depend on when the real cores start
reporting WebSocket streams.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from multicorn.app.dispatch import StreamBridge, default_bridges
from multicorn.app.http import HTTPStream
from multicorn.app.websocket import WebSocketStream
from multicorn.protocol.events import (
    AcknowledgeData,
    DataReceived,
    RequestReceived,
    SendData,
    SendResponse,
    StreamEnded,
    StreamKind,
    StreamReset,
)

from .fakes import TEST_LOGGER, FakeProtocol, make_handler, ok_app


def request(stream_id: int, kind: StreamKind, target: bytes = b"/chat") -> RequestReceived:
    return RequestReceived(
        stream_id=stream_id,
        method=b"GET",
        target=target,
        http_version="1.1",
        headers=[(b"host", b"example.com")],
        kind=kind,
    )


class RecordingBridge:
    """A stand-in for the WebSocket bridge: records what the handler calls on it."""

    made: list[RecordingBridge] = []

    def __init__(self, conn: Any, event: RequestReceived) -> None:
        self.stream_id = event.stream_id
        self.conn = conn
        self.calls: list[object] = []
        self.finish = conn.runtime.waiter()
        RecordingBridge.made.append(self)

    def data_received(self, data: bytes) -> None:
        self.calls.append(("data", data))

    def ended(self) -> None:
        self.calls.append("ended")

    def client_gone(self) -> None:
        self.calls.append("gone")
        self.finish.set()

    def abandon(self) -> None:
        self.calls.append("abandon")

    def going_away(self, restart: bool = False) -> None:
        self.calls.append("going away")

    async def run(self) -> None:
        self.calls.append("run")
        await self.finish.wait()
        self.calls.append("returned")


@pytest.fixture(autouse=True)
def _clear() -> None:
    RecordingBridge.made.clear()


def test_recording_bridge_has_the_bridge_shape() -> None:
    bridge: type[StreamBridge] = RecordingBridge  # type-checked shape, as for HTTPStream
    assert bridge is RecordingBridge
    assert default_bridges() == {
        StreamKind.REQUEST: HTTPStream,
        StreamKind.WEBSOCKET: WebSocketStream,
    }


def test_a_registered_bridge_gets_its_kind_of_stream() -> None:
    app_calls: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        app_calls.append(scope["type"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    protocol = FakeProtocol()
    bridges = {**default_bridges(), StreamKind.WEBSOCKET: RecordingBridge}
    handler, runtime, _ = make_handler(protocol, app, bridges=bridges)
    protocol.feed(
        request(1, StreamKind.WEBSOCKET),
        DataReceived(stream_id=1, data=b"frame"),
        request(3, StreamKind.REQUEST, target=b"/plain"),
        StreamEnded(stream_id=3),
        StreamEnded(stream_id=1),
    )
    handler.data_received(b"")
    runtime.run()

    [bridge] = RecordingBridge.made
    assert bridge.stream_id == 1 and bridge.conn is handler
    assert bridge.calls == [("data", b"frame"), "ended", "run"]
    # The plain request went to the ASGI http bridge and was answered by the app.
    assert app_calls == ["http"]
    assert SendResponse(stream_id=3, status=204, headers=[]) in protocol.commands

    protocol.feed(StreamReset(stream_id=1))
    handler.data_received(b"")
    runtime.run()
    assert bridge.calls[-2:] == ["gone", "returned"]
    assert handler._streams == {} and handler._tasks == {}
    assert all(task.done for task in runtime.tasks)


def test_a_kind_without_a_bridge_is_answered_501(caplog: pytest.LogCaptureFixture) -> None:
    called: list[object] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope)

    caplog.set_level(logging.DEBUG, logger=TEST_LOGGER)
    protocol = FakeProtocol()
    handler, runtime, transport = make_handler(
        protocol, app, bridges={StreamKind.REQUEST: HTTPStream}
    )
    protocol.feed(request(1, StreamKind.WEBSOCKET), DataReceived(stream_id=1, data=b"x" * 10))
    handler.data_received(b"")
    runtime.run()

    assert called == []
    assert runtime.tasks == []
    [response, body, ack] = protocol.commands
    assert isinstance(response, SendResponse) and response.stream_id == 1
    assert response.status == 501
    assert isinstance(body, SendData) and body.end_stream and body.data.startswith(b"501")
    # Whatever the peer sends on the declined stream still gives its window back.
    assert ack == AcknowledgeData(stream_id=1, amount=10)
    assert not transport.aborted
    [record] = [r for r in caplog.records if r.name == TEST_LOGGER]
    assert record.levelno == logging.DEBUG and "websocket" in record.getMessage()


class FaultyOnShutdown(RecordingBridge):
    def going_away(self, restart: bool = False) -> None:
        super().going_away(restart)
        raise RuntimeError("a bug in one stream's shutdown")


def test_a_fault_in_one_streams_shutdown_costs_that_stream(
    caplog: pytest.LogCaptureFixture,
) -> None:
    protocol = FakeProtocol()
    bridges = {StreamKind.REQUEST: FaultyOnShutdown, StreamKind.WEBSOCKET: RecordingBridge}
    handler, runtime, transport = make_handler(protocol, ok_app, bridges=bridges)
    protocol.feed(request(1, StreamKind.REQUEST), request(3, StreamKind.WEBSOCKET))
    handler.data_received(b"")
    runtime.run()
    caplog.set_level(logging.ERROR, logger=TEST_LOGGER)
    handler.shutdown()
    runtime.run()
    faulty, healthy = RecordingBridge.made
    assert "going away" in faulty.calls and "abandon" in faulty.calls
    assert "going away" in healthy.calls and "abandon" not in healthy.calls
    assert not transport.aborted
    assert any("stream 1" in r.getMessage() for r in caplog.records)
