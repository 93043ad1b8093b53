"""Dropping the socket and ending the app tasks are separate: `abort()` and `cancel_tasks()`."""

from __future__ import annotations

from typing import Any

from multicorn.app.connection import ConnectionHandler
from multicorn.app.errors import ClientDisconnected
from multicorn.app.registry import ConnectionRegistry
from multicorn.protocol.events import RequestReceived, StreamEnded

from .fakes import FakeProtocol, FakeRuntime, FakeTransport, FakeWaiter, make_handler


class CleanupApp:
    """Streams a response; when the peer is gone, awaits its cleanup, then records it."""

    def __init__(self) -> None:
        self.cleanup = FakeWaiter()
        self.steps: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while True:
                await send({"type": "http.response.body", "body": b"x", "more_body": True})
                self.steps.append("sent")
        except ClientDisconnected:
            self.steps.append("disconnected")
            await self.cleanup.wait()  # e.g. closing a database cursor
            self.steps.append("cleaned up")


def open_stream(
    protocol: FakeProtocol,
) -> tuple[ConnectionHandler, FakeRuntime, FakeTransport, CleanupApp]:
    app = CleanupApp()
    handler, runtime, transport = make_handler(protocol, app)
    protocol.feed(
        RequestReceived(stream_id=1, method=b"GET", target=b"/", http_version="2", headers=[]),
        StreamEnded(stream_id=1),
    )
    handler.data_received(b"")
    return handler, runtime, transport, app


def test_abort_drops_the_socket_and_lets_the_task_finish() -> None:
    protocol = FakeProtocol()
    handler, runtime, transport, app = open_stream(protocol)
    handler.pause_writing()  # the app's send() now waits for the socket
    runtime.run()
    handler.abort()
    assert transport.aborted
    runtime.run()
    assert app.steps[-1] == "disconnected"
    app.cleanup.set()
    runtime.run()
    assert app.steps[-1] == "cleaned up"
    [task] = runtime.tasks
    assert task.done and not task.cancelled


def test_cancel_tasks_cancels_and_leaves_the_socket() -> None:
    protocol = FakeProtocol()
    handler, runtime, transport, _app = open_stream(protocol)
    handler.pause_writing()
    runtime.run()
    handler.cancel_tasks()
    runtime.run()
    [task] = runtime.tasks
    assert task.cancelled
    assert not transport.aborted and not transport.closed
    assert handler._tasks == {}


def test_slow_read_cut_off_aborts_without_cancelling() -> None:
    protocol = FakeProtocol()
    handler, runtime, transport, app = open_stream(protocol)
    runtime.timeouts_expire = True  # send_timeout passes at once
    handler.pause_writing()
    runtime.run()
    assert transport.aborted
    assert app.steps[-1] == "disconnected"
    app.cleanup.set()
    runtime.run()
    assert app.steps[-1] == "cleaned up"
    assert not runtime.tasks[0].cancelled


def test_drain_after_the_graceful_timeout_aborts_and_cancels() -> None:
    protocol = FakeProtocol()
    handler, runtime, transport, _app = open_stream(protocol)
    handler.pause_writing()
    runtime.run()
    registry: ConnectionRegistry = handler._registry
    runtime.timeouts_expire = True
    results: list[bool] = []

    async def drain() -> None:
        results.append(await registry.drain(0.0))

    runtime.spawn(drain)
    runtime.run()
    assert results == [False]
    assert transport.aborted
    assert runtime.tasks[0].cancelled
