"""Faults stay in their stream: ConnectionHandler driven by real protocol cores and a fake backend.

Whatever raises while one stream's event is handled (building its scope, a bridge's event method,
the bridge's run) is logged once with its traceback and costs that stream: a 500 if its response
has not started, else a reset. The connection and its other streams carry on.
"""

from __future__ import annotations

import logging
from typing import Any

import h2.config
import h2.connection
import h2.events
import h11
import pytest

import multicorn.app.http
import multicorn.app.scope
from multicorn.app.dispatch import default_bridges
from multicorn.app.http import HTTPStream
from multicorn.protocol.events import RequestReceived, StreamKind
from multicorn.protocol.http2 import HTTP2Limits, HTTP2Protocol
from multicorn.protocol.http11 import HTTP11Limits, HTTP11Protocol

from .fakes import TEST_LOGGER, FakeProtocol, FakeRuntime, FakeTransport, make_handler, ok_app


def errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == TEST_LOGGER and r.levelno >= logging.ERROR]


@pytest.fixture
def boom_scope(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building the scope of a request for /boom raises, as a bug of ours would."""
    real = multicorn.app.scope.build_http_scope

    def build(event: RequestReceived, *args: Any, **kwargs: Any) -> Any:
        if event.target == b"/boom":
            raise RuntimeError("scope hook failed")
        return real(event, *args, **kwargs)

    monkeypatch.setattr(multicorn.app.http, "build_http_scope", build)


# ---- HTTP/2 -------------------------------------------------------------------------------


class H2Exchange:
    def __init__(self, app: Any = ok_app, **context: Any) -> None:
        self.protocol = HTTP2Protocol(limits=HTTP2Limits(), now=0.0)
        self.handler, self.runtime, self.transport = make_handler(self.protocol, app, **context)
        config = h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False
        )
        self.client = h2.connection.H2Connection(config=config)
        self.client.initiate_connection()
        self.events: list[Any] = []

    def headers(self, path: bytes, method: bytes = b"GET") -> list[tuple[bytes, bytes]]:
        return [
            (b":method", method),
            (b":scheme", b"https"),
            (b":authority", b"example.com"),
            (b":path", path),
        ]

    def pump(self) -> None:
        for _ in range(10):
            data = self.client.data_to_send()
            if data:
                self.handler.data_received(data)
            self.runtime.run()
            out = self.transport.take()
            if not data and not out:
                return
            if out:
                self.events.extend(self.client.receive_data(out))

    def status(self, stream_id: int) -> int | None:
        for event in self.events:
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                return int(dict(event.headers)[b":status"])
        return None

    def body(self, stream_id: int) -> bytes:
        return b"".join(
            e.data
            for e in self.events
            if isinstance(e, h2.events.DataReceived) and e.stream_id == stream_id
        )

    def was_reset(self, stream_id: int) -> bool:
        return any(
            isinstance(e, h2.events.StreamReset) and e.stream_id == stream_id for e in self.events
        )


def test_h2_scope_failure_costs_only_its_stream(
    boom_scope: None, caplog: pytest.LogCaptureFixture
) -> None:
    ex = H2Exchange()
    # Both requests arrive in one read: the failing one must not take the other with it.
    ex.client.send_headers(1, ex.headers(b"/boom"), end_stream=True)
    ex.client.send_headers(3, ex.headers(b"/fine"), end_stream=True)
    ex.pump()
    assert ex.status(1) == 500
    assert ex.status(3) == 200
    assert ex.body(3) == b"/fine"
    assert not ex.transport.aborted and not ex.transport.closed
    [record] = errors(caplog)
    assert record.exc_info is not None and "scope hook failed" in str(record.exc_info[1])
    # The connection still serves new streams.
    ex.client.send_headers(5, ex.headers(b"/after"), end_stream=True)
    ex.pump()
    assert ex.status(5) == 200


def test_h2_undecodable_method_costs_only_its_stream(caplog: pytest.LogCaptureFixture) -> None:
    ex = H2Exchange()
    ex.client.send_headers(1, ex.headers(b"/", method=b"G\xffT"), end_stream=True)
    ex.client.send_headers(3, ex.headers(b"/fine"), end_stream=True)
    ex.pump()
    # The core may reset such a head itself (RFC 9113 8.1.1); if it reaches us, it is a 500.
    assert ex.status(1) == 500 or ex.was_reset(1)
    assert ex.status(3) == 200
    assert not ex.transport.aborted
    assert len(errors(caplog)) <= 1


class _ExplodingBody(HTTPStream):
    """A bridge with a bug in its body handling."""

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        raise RuntimeError("bridge bug in data_received")


class _ExplodingEnd(HTTPStream):
    __slots__ = ()

    def ended(self) -> None:
        raise RuntimeError("bridge bug in ended")


def _bridges(request_bridge: Any) -> dict[StreamKind, Any]:
    return {**default_bridges(), StreamKind.REQUEST: request_bridge}


def test_bridge_event_failure_before_the_response_is_a_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ex = H2Exchange(bridges=_bridges(_ExplodingBody))
    ex.client.send_headers(1, ex.headers(b"/upload", method=b"POST"))
    ex.client.send_data(1, b"data", end_stream=True)
    ex.client.send_headers(3, ex.headers(b"/fine"), end_stream=True)
    ex.pump()
    assert ex.status(1) == 500
    assert ex.status(3) == 200
    assert not ex.transport.aborted
    [record] = errors(caplog)
    assert record.exc_info is not None
    # The stream's app was told its peer is gone, and every task has ended.
    assert all(task.done for task in ex.runtime.tasks)
    assert not ex.runtime.crashed
    assert ex.handler._streams == {}


def test_bridge_event_failure_after_the_response_started_is_a_reset(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def streaming_app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass

    ex = H2Exchange(app=streaming_app, bridges=_bridges(_ExplodingEnd))
    ex.client.send_headers(1, ex.headers(b"/stream", method=b"POST"))
    ex.pump()
    assert ex.status(1) == 200
    ex.client.end_stream(1)
    ex.pump()
    assert ex.was_reset(1)
    assert not ex.transport.aborted
    assert len(errors(caplog)) == 1
    assert all(task.done for task in ex.runtime.tasks) and not ex.runtime.crashed


class _ExplodingRun(HTTPStream):
    __slots__ = ()

    async def run(self) -> None:
        raise RuntimeError("bridge bug in run")


def test_bridge_run_failure_is_a_500_and_ends_the_stream(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ex = H2Exchange(bridges=_bridges(_ExplodingRun))
    ex.client.send_headers(1, ex.headers(b"/"), end_stream=True)
    ex.pump()
    assert ex.status(1) == 500
    assert not ex.runtime.crashed
    assert ex.handler._streams == {} and ex.handler._tasks == {}
    assert len(errors(caplog)) == 1


# ---- HTTP/1.1 -----------------------------------------------------------------------------


def test_h1_scope_failure_costs_only_its_request(
    boom_scope: None, caplog: pytest.LogCaptureFixture
) -> None:
    protocol = HTTP11Protocol(limits=HTTP11Limits(), now=0.0)
    handler, runtime, transport = make_handler(protocol, ok_app)
    # Pipelined: the second request waits in the core until the first is answered.
    handler.data_received(
        b"GET /boom HTTP/1.1\r\nHost: a\r\n\r\nGET /fine HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    runtime.run()
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/boom", headers=[("Host", "a")]))
    client.send(h11.EndOfMessage())
    client.receive_data(transport.take())
    first = client.next_event()
    assert isinstance(first, h11.Response) and first.status_code == 500
    while not isinstance(client.next_event(), h11.EndOfMessage):
        pass
    client.start_next_cycle()
    client.send(h11.Request(method="GET", target="/fine", headers=[("Host", "a")]))
    client.send(h11.EndOfMessage())
    second = client.next_event()
    assert isinstance(second, h11.Response) and second.status_code == 200
    assert isinstance(client.next_event(), h11.Data)
    assert not transport.aborted and not transport.closed
    assert len(errors(caplog)) == 1


# ---- below the streams --------------------------------------------------------------------


class _BrokenCore(FakeProtocol):
    def receive_data(self, data: bytes, now: float) -> list[Any]:
        raise RuntimeError("protocol core bug")


def test_a_core_failure_costs_the_connection_not_the_caller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler, _, transport = make_handler(_BrokenCore(), ok_app)
    handler.data_received(b"anything")  # must not raise into the backend
    assert transport.aborted
    [record] = errors(caplog)
    assert record.exc_info is not None


def test_fake_runtime_sanity() -> None:
    # The fakes themselves: a waiter wakes a task only once set.
    runtime = FakeRuntime()
    waiter = runtime.waiter()
    seen: list[str] = []

    async def task() -> None:
        await waiter.wait()
        seen.append("woke")

    runtime.spawn(task)
    runtime.run()
    assert seen == []
    waiter.set()
    runtime.run()
    assert seen == ["woke"]
    assert FakeTransport().closes_by_itself


async def bad_header_app(scope: Any, receive: Any, send: Any) -> None:
    """Answers /bad with a header the protocol refuses to frame (a response-splitting CR LF)."""
    headers = [(b"x-bad", b"one\r\ntwo")] if scope["path"] == "/bad" else []
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


def test_h2_refused_response_head_is_a_500_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    ex = H2Exchange(app=bad_header_app)
    ex.client.send_headers(1, ex.headers(b"/bad"), end_stream=True)
    ex.client.send_headers(3, ex.headers(b"/fine"), end_stream=True)
    ex.pump()
    assert ex.status(1) == 500
    assert ex.status(3) == 200
    assert not ex.transport.aborted
    [record] = errors(caplog)
    assert record.exc_info is not None
    assert not ex.runtime.crashed


def test_h1_refused_response_head_is_a_500_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    protocol = HTTP11Protocol(limits=HTTP11Limits(), now=0.0)
    handler, runtime, transport = make_handler(protocol, bad_header_app)
    handler.data_received(b"GET /bad HTTP/1.1\r\nHost: a\r\n\r\n")
    runtime.run()
    assert transport.take().startswith(b"HTTP/1.1 500 ")
    assert len(errors(caplog)) == 1
    assert not runtime.crashed
